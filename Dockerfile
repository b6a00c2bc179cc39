# ssebridge in a container: a static binary on a distroless base.
FROM golang:1.26 AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
RUN CGO_ENABLED=0 go build -trimpath -o /ssebridge .

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /ssebridge /ssebridge
EXPOSE 8080
ENTRYPOINT ["/ssebridge"]
