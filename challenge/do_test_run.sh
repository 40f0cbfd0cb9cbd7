#!/usr/bin/env bash
# Run the built image on the checked-in test inputs of all three entry modes, as a
# leaderboard would (no network, input read-only), and compare with the expected outputs.
#   challenge/do_test_run.sh
source "$(dirname "$0")/common.sh"
T="$REPO/challenge/test"
OUT=$(mktemp -d)
trap 'rm -rf "$OUT"' EXIT
chmod 777 "$OUT"
fail=0
check() {  # check NAME ACTUAL EXPECTED
  if "$(python_bin)" "$REPO/challenge/compare.py" "$2" "$3"; then echo "PASS $1"; else echo "FAIL $1"; fail=1; fi
}

mkdir -m 777 "$OUT/chexpert"
engine_run --network none -v "$T/chexpert:/input:ro" -v "$OUT/chexpert:/output" "$TAG" input.csv /output/output.csv
check "chexpert (CodaLab: input.csv output.csv)" "$OUT/chexpert/output.csv" "$T/chexpert/expected.csv"

mkdir -m 777 "$OUT/cxrlt"
engine_run --network none -v "$T/cxrlt:/input:ro" -v "$OUT/cxrlt:/output" "$TAG" cxr-lt input.csv /output
check "cxr-lt submission.csv" "$OUT/cxrlt/submission.csv" "$T/cxrlt/expected/submission.csv"
"$(python_bin)" -c "import sys, zipfile; z = zipfile.ZipFile(sys.argv[1]); assert z.namelist() == ['submission.csv'], z.namelist(); assert z.read('submission.csv') == open(sys.argv[2], 'rb').read()" \
  "$OUT/cxrlt/submission.zip" "$OUT/cxrlt/submission.csv" && echo "PASS cxr-lt submission.zip" || { echo "FAIL cxr-lt submission.zip"; fail=1; }

mkdir -m 777 "$OUT/gc"
engine_run --network none -v "$T/gc/input:/input:ro" -v "$OUT/gc:/output" "$TAG"
check "grand-challenge results.json" "$OUT/gc/results.json" "$T/gc/expected/results.json"
check "grand-challenge probabilities.json" "$OUT/gc/probabilities.json" "$T/gc/expected/probabilities.json"

# a failure must exit non-zero with the reason on stderr
if engine_run --network none -v "$T/cxrlt:/input:ro" "$TAG" chexpert missing.csv /tmp/out.csv 2>"$OUT/err.txt"; then
  echo "FAIL error exit (exit code 0)"; fail=1
elif grep -q "missing.csv" "$OUT/err.txt"; then echo "PASS error exit: $(head -1 "$OUT/err.txt")"
else echo "FAIL error message: $(cat "$OUT/err.txt")"; fail=1; fi

# the model can also be mounted read-only at /opt/ml/model instead of baked in
mkdir -m 777 "$OUT/mounted"
engine_run --network none -v "$T/model:/opt/ml/model:ro" -v "$T/gc/input:/input:ro" -v "$OUT/mounted:/output" "$TAG"
check "model mounted read-only" "$OUT/mounted/probabilities.json" "$T/gc/expected/probabilities.json"

exit $fail
