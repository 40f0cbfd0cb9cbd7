#!/usr/bin/env bash
# Save the built image, gzip'd, for upload (one image, linux/amd64):
#   challenge/do_save.sh [OUT.tar.gz]
# Then checks that the file loads back (docker load / podman load of the decompressed
# archive) into the same image id. Load it elsewhere with `docker load < OUT.tar.gz`, or
# with podman 4, which does not decompress itself: `gunzip -c OUT.tar.gz | podman load`.
source "$(dirname "$0")/common.sh"
OUTFILE="${1:-$REPO/challenge/build/cxrkit-challenge.tar.gz}"
mkdir -p "$(dirname "$OUTFILE")"
engine_save "$TAG" "$OUTFILE"
echo "saved $TAG to $OUTFILE ($(du -h "$OUTFILE" | cut -f1))"
if [ "$ENGINE" = docker ]; then
  want=$(docker image inspect -f '{{.Id}}' "$TAG"); got=$(gzip -dc "$OUTFILE" | docker load -q | awk '{print $NF}')
  got=$(docker image inspect -f '{{.Id}}' "$got")
else
  want=$(podman image inspect -f '{{.Id}}' "$TAG"); gzip -dc "$OUTFILE" | podman load -q >/dev/null
  got=$(podman image inspect -f '{{.Id}}' "$TAG")
fi
if [ "$want" = "$got" ]; then echo "PASS the saved file loads back as the same image (${want:0:19})"
else echo "FAIL the saved file loads back as ${got:0:19}, not ${want:0:19}"; exit 1; fi
