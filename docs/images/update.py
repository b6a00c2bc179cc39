#!/usr/bin/python3
"""Redraws docs/images/ from the screenshots the browser tests write.

    CI=true go test -race -count=1 -run 'TestDemoPageTryOut|TestDjangoChatOrigins|TestBrowserJSSharedStream|TestBrowserPresence' ./e2e/
    /usr/bin/python3 docs/images/update.py      # Debian's python3-pil

The tests write full-size PNGs into artifacts/ (or $ARTIFACTS_DIR); this
trims their blank margins and reduces them to 64 colours.
"""
import os

from PIL import Image, ImageChops, ImageDraw

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SRC = os.environ.get("ARTIFACTS_DIR") or os.path.join(ROOT, "artifacts")
DST = os.path.join(ROOT, "docs", "images")


def shot(name):
    return trim(Image.open(os.path.join(SRC, name)).convert("RGB"))


def trim(im, pad=16):
    bg = Image.new(im.mode, im.size, im.getpixel((0, 0)))
    mask = ImageChops.difference(im, bg).convert("L").point(lambda v: 255 if v > 8 else 0)
    left, top, right, bottom = mask.getbbox()
    return im.crop((max(0, left - pad), max(0, top - pad), min(im.width, right + pad), min(im.height, bottom + pad)))


def save(im, name):
    im.quantize(colors=64, method=Image.Quantize.MEDIANCUT).save(os.path.join(DST, name), optimize=True)
    print(os.path.join("docs", "images", name))


save(shot("demo-2-before-logout.png"), "demo-page.png")      # TestDemoPageTryOut
save(shot("django-chat-localhost.png"), "django-chat.png")  # TestDjangoChatOrigins
# TestBrowserJSSharedStream: the leader's tab and a follower's, side by side.
leader, follower = shot("shared-tabs-leader.png"), shot("shared-tabs-follower.png")
gap = 24
both = Image.new("RGB", (leader.width + gap + follower.width, max(leader.height, follower.height)), (255, 255, 255))
both.paste(leader, (0, 0))
both.paste(follower, (leader.width + gap, 0))
ImageDraw.Draw(both).line([(leader.width + gap // 2, 0), (leader.width + gap // 2, both.height)], fill=(180, 180, 180), width=2)
save(both, "shared-tabs.png")


def side_by_side(shots, name):
    """shots in a row, a grey line between each two."""
    gap = 24
    width = sum(s.width for s in shots) + gap * (len(shots) - 1)
    row = Image.new("RGB", (width, max(s.height for s in shots)), (255, 255, 255))
    x = 0
    for i, s in enumerate(shots):
        if i:
            ImageDraw.Draw(row).line([(x - gap // 2, 0), (x - gap // 2, row.height)], fill=(180, 180, 180), width=2)
        row.paste(s, (x, 0))
        x += s.width + gap
    save(row, name)


# TestBrowserPresence: alice's page as bob arrives, bob's, alice's after he left.
side_by_side([shot("presence-alice-sees-bob-arrive.png"), shot("presence-bob-arrived.png"), shot("presence-alice-sees-bob-leave.png")], "presence.png")
