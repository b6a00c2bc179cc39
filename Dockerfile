# ssebridge in a container: a static binary on distroless, run as non-root.
#
#   docker build --build-arg VERSION=0.3.0 -t ssebridge:0.3.0 .
#
# deploy/release.sh builds it so (docs/RELEASING.md). The image starts the
# server mode: give it REDIS_URL (or the Sentinel or Cluster variables);
# without one it would start the try-out mode, which listens on loopback
# only, out of reach from outside the container.
#
# The base images are pinned by tag, not digest: a digest could not be
# checked where this file was written (no container engine, no registry),
# and an unchecked digest is worse than none. To pin them, replace each tag
# by tag@sha256:… as `docker buildx imagetools inspect IMAGE:TAG` prints it.
#
# Reproducible: no timestamp or build path is baked in (-trimpath, no VCS
# stamping: .git is not in the build context), and with BuildKit a
# SOURCE_DATE_EPOCH build argument sets the layers' times.

# The build runs on the builder's own platform and cross-compiles (no
# emulation): docker buildx build --platform linux/amd64,linux/arm64 .
FROM --platform=$BUILDPLATFORM golang:1.26-bookworm AS build
ARG TARGETOS
ARG TARGETARCH
ARG VERSION=
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
# VERSION empty: the source's own version (internal/version).
RUN CGO_ENABLED=0 GOOS=$TARGETOS GOARCH=$TARGETARCH \
    go build -trimpath -buildvcs=false \
    -ldflags "-s -w ${VERSION:+-X github.com/ssebridge/ssebridge/internal/version.Version=$VERSION}" \
    -o /out/ssebridge .

FROM gcr.io/distroless/static-debian12:nonroot
ARG VERSION=
LABEL org.opencontainers.image.title="ssebridge" \
      org.opencontainers.image.description="Server-Sent Events from Redis to browsers" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${VERSION}"
COPY --from=build /out/ssebridge /ssebridge
# distroless's nonroot user, by number (so that a runAsNonRoot check can
# tell without an /etc/passwd lookup).
USER 65532:65532
EXPOSE 8080
# No HEALTHCHECK: distroless has no shell and no curl to run one. Probe
# GET /healthz (liveness) and GET /readyz (readiness) from the orchestrator.
ENTRYPOINT ["/ssebridge"]
