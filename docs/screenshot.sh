#!/bin/sh
# Renders an evaluation report (default: the newest run's, from `make demo`) to docs/report.png
# with headless Chromium (Debian: apt-get install chromium-headless-shell, or chromium), then
# trims the blank bottom and shrinks it to a palette PNG.
#   docs/screenshot.sh [REPORT]
set -eu
cd "$(dirname "$0")/.."
report=${1:-$(ls -t runs/*/evaluate/report | head -1)}
chromium=$(command -v chromium-headless-shell || command -v chromium)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cp "$report" "$tmp/report.html"  # The artifact has no extension; Chromium needs one.
"$chromium" --headless --no-sandbox --hide-scrollbars --window-size=1280,4000 \
    --screenshot="$tmp/full.png" "file://$tmp/report.html" 2>/dev/null
.venv/bin/python - "$tmp/full.png" docs/report.png <<'PY'
import sys

from PIL import Image, ImageOps

image = Image.open(sys.argv[1]).convert("RGB")
content = ImageOps.invert(image).getbbox()  # Everything that is not white.
image = image.crop((0, 0, image.width, min(image.height, content[3] + 30)))
image = image.resize((960, round(image.height * 960 / image.width)), Image.LANCZOS)
image.quantize(colors=128, method=Image.Quantize.MEDIANCUT).save(sys.argv[2], optimize=True)
PY
echo "wrote docs/report.png from $report"
