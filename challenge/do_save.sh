#!/usr/bin/env bash
# Save the built image, gzip'd, for upload:  challenge/do_save.sh [OUT.tar.gz]
source "$(dirname "$0")/common.sh"
OUTFILE="${1:-$REPO/challenge/build/cxrkit-challenge.tar.gz}"
mkdir -p "$(dirname "$OUTFILE")"
engine_save "$TAG" "$OUTFILE"
echo "saved $TAG to $OUTFILE ($(du -h "$OUTFILE" | cut -f1))"
