#!/bin/sh
# Re-vendor the chart libraries into web/static/vendor/ from the npm registry.
# The pages load them from our own origin (no CDN; the CSP allows 'self' only).
# All four are BSD-3-Clause; their LICENSE files are copied beside them.
set -eu
DEST="$(cd "$(dirname "$0")/.." && pwd)/web/static/vendor"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
cd "$WORK"
for spec in vega@5.30.0:vega vega-lite@5.20.1:vega-lite vega-embed@6.26.0:vega-embed \
            vega-interpreter@1.0.5:vega-interpreter; do
    pkg="${spec%%:*}"; name="${spec##*:}"
    npm pack --silent "$pkg" >/dev/null
    mkdir "$name" && tar xzf "$name"-*.tgz -C "$name" --strip-components=1
    cp "$name/build/$name.min.js" "$DEST/$name.min.js"
    cp "$name/LICENSE" "$DEST/$name.LICENSE"
done
echo "vendored into $DEST"
