#!/usr/bin/env bash
# Run the built image on the checked-in test inputs of every entry mode, the way each
# platform runs it, and compare with the expected outputs.
#   challenge/do_test_run.sh
#   CXRKIT_IMAGE=cxrkit-challenge:openvino CXRKIT_ENGINE=openvino CXRKIT_PRECISION=fp32 challenge/do_test_run.sh
# Every run: no network, a read-only root filesystem (so nothing can be written outside
# /output and /tmp), an empty tmpfs /tmp, all capabilities dropped, no-new-privileges, a
# memory limit ($CXRKIT_TEST_MEMORY, default 4g; empty to skip where cgroups are unavailable),
# inputs read-only.
source "$(dirname "$0")/common.sh"
T="$REPO/challenge/test"
OUT=$(mktemp -d)
trap 'rm -rf "$OUT"' EXIT
chmod 777 "$OUT"
fail=0
MEM="${CXRKIT_TEST_MEMORY-4g}"
STRICT=(--network none --read-only --tmpfs /tmp:rw,size=512m --cap-drop all --security-opt no-new-privileges)
[ -n "$MEM" ] && STRICT+=(--memory "$MEM")
# CXRKIT_ENGINE / CXRKIT_PRECISION pass through (e.g. the OpenVINO image: CXRKIT_ENGINE=openvino
# CXRKIT_PRECISION=fp32 compares OpenVINO's fp32 outputs with the expected onnxruntime ones)
for v in CXRKIT_ENGINE CXRKIT_PRECISION; do [ -n "${!v:-}" ] && STRICT+=(-e "$v=${!v}"); done
pass() { echo "PASS $1"; }
failed() { echo "FAIL $1"; fail=1; }
check() {  # check NAME ACTUAL EXPECTED
  if "$(python_bin)" "$REPO/challenge/compare.py" "$2" "$3"; then pass "$1"; else failed "$1"; fi
}
no_warnings() {  # no_warnings NAME STDERR_FILE: a good case prints nothing on stderr
  if [ -s "$2" ]; then failed "$1: stderr not empty: $(head -3 "$2")"; else pass "$1: stderr empty"; fi
}

# --- CheXpert on CodaLab: entrypoint cleared, bash -c '( CMD ) >stdout 2>stderr', an
# arbitrary uid (not the image's), HOME a read-only bundle folder, working folder read-only
mkdir -m 777 "$OUT/chexpert"
engine_run "${STRICT[@]}" --entrypoint "" --user 4242:4242 -e HOME=/input -w /input \
  -v "$T/chexpert:/input:ro" -v "$OUT/chexpert:/output" "$TAG" \
  bash -c '( cxrkit-submit input.csv /output/output.csv ) >/output/stdout 2>/output/stderr'
check "chexpert (CodaLab: cl run ... 'cxrkit-submit input.csv output.csv', uid 4242)" \
  "$OUT/chexpert/output.csv" "$T/chexpert/expected.csv"
no_warnings "chexpert" "$OUT/chexpert/stderr"

# --- CXR-LT 2023: submission.csv + submission.zip (CSV and code/)
mkdir -m 777 "$OUT/cxrlt"
engine_run "${STRICT[@]}" -v "$T/cxrlt:/input:ro" -v "$OUT/cxrlt:/output" "$TAG" cxr-lt input.csv /output \
  2>"$OUT/cxrlt.err"
check "cxr-lt 2023 submission.csv" "$OUT/cxrlt/submission.csv" "$T/cxrlt/expected/submission.csv"
"$(python_bin)" -c "import sys, zipfile; z = zipfile.ZipFile(sys.argv[1]); n = z.namelist(); assert n[0] == 'submission.csv' and 'code/MODEL_CARD.md' in n, n; assert z.read('submission.csv') == open(sys.argv[2], 'rb').read()" \
  "$OUT/cxrlt/submission.zip" "$OUT/cxrlt/submission.csv" && pass "cxr-lt submission.zip (CSV + code/)" || failed "cxr-lt submission.zip"
no_warnings "cxr-lt" "$OUT/cxrlt.err"

# --- CXR-LT 2024 task 2 (26 classes with Normal) and task 1 (40 classes: this model lacks 14)
mkdir -m 777 "$OUT/task2"
engine_run "${STRICT[@]}" -v "$T/cxrlt:/input:ro" -v "$OUT/task2:/output" "$TAG" \
  cxr-lt input.csv /output --sample-submission sample_task2.csv
"$(python_bin)" - "$OUT/task2/submission.csv" "$T/cxrlt/sample_task2.csv" "$T/cxrlt/expected/submission.csv" <<'PY' && pass "cxr-lt 2024 task 2: header, row order and values" || failed "cxr-lt 2024 task 2"
import csv, sys
got, sample, ref = (list(csv.reader(open(p))) for p in sys.argv[1:4])
assert got[0] == sample[0], (got[0], sample[0])
assert [r[0] for r in got[1:]] == [r[0] for r in sample[1:]]
refd = {r[0]: dict(zip(ref[0][1:], map(float, r[1:]))) for r in ref[1:]}
for r in got[1:]:
    row = dict(zip(got[0][1:], map(float, r[1:])))
    assert abs(row["Normal"] - refd[r[0]]["No Finding"]) < 1e-4
    assert all(abs(row[c] - refd[r[0]][c]) < 1e-4 for c in row if c != "Normal")
PY
mkdir -m 777 "$OUT/task1"
if engine_run "${STRICT[@]}" -v "$T/cxrlt:/input:ro" -v "$OUT/task1:/output" "$TAG" \
  cxr-lt input.csv /output --sample-submission sample_task1.csv 2>"$OUT/task1.err"; then
  failed "cxr-lt 2024 task 1 must fail: the model lacks classes"
elif grep -q "Tuberculosis" "$OUT/task1.err" && [ "$(wc -l < "$OUT/task1.err")" -eq 1 ]; then
  pass "cxr-lt 2024 task 1 refused in one line: $(cut -c1-110 "$OUT/task1.err")..."
else failed "cxr-lt 2024 task 1 message: $(cat "$OUT/task1.err")"; fi

# --- grand-challenge: two output sockets from the phase's interface, a value input next to
# the image, the image a symlink (as the platform's shim makes it), HOME unwritable
GC="$OUT/gc-input"
mkdir -p "$GC/images/chest-x-ray" "$OUT/store"
cp "$T/gc/input/images/chest-x-ray/case.mha" "$OUT/store/case.mha"
ln -s /store/case.mha "$GC/images/chest-x-ray/case.mha"
echo 63 > "$GC/patient-age.json"
cat > "$GC/inputs.json" <<'JSON'
[{"interface": {"slug": "chest-x-ray", "kind": "Image", "super_kind": "Image", "relative_path": "images/chest-x-ray"},
  "image": {"name": "case.mha"}},
 {"interface": {"slug": "patient-age", "kind": "Integer", "super_kind": "Value", "relative_path": "patient-age.json"},
  "value": 63}]
JSON
chmod -R a+rX "$OUT"
mkdir -m 777 "$OUT/gc"
engine_run "${STRICT[@]}" -e HOME=/nonexistent -e CXRKIT_GC_INTERFACE=/config/interface.json \
  -v "$T/gc/interface.json:/config/interface.json:ro" -v "$GC:/input:ro" -v "$OUT/store:/store:ro" \
  -v "$OUT/gc:/output" "$TAG" 2>"$OUT/gc.err"
check "grand-challenge socket chest-x-ray-findings.json" "$OUT/gc/chest-x-ray-findings.json" "$T/gc/expected/probabilities.json"
"$(python_bin)" -c "import json, sys; a = json.load(open(sys.argv[1])); b = json.load(open(sys.argv[2]))['Cardiomegaly']; assert abs(a - b) < 1e-4, (a, b)" \
  "$OUT/gc/cardiomegaly-likelihood.json" "$T/gc/expected/probabilities.json" \
  && pass "grand-challenge socket cardiomegaly-likelihood.json (float)" || failed "grand-challenge float socket"
[ "$(ls "$OUT/gc" | sort | tr '\n' ' ')" = "cardiomegaly-likelihood.json chest-x-ray-findings.json " ] \
  && pass "grand-challenge: exactly the interface's outputs" || failed "grand-challenge outputs: $(ls "$OUT/gc")"
no_warnings "grand-challenge" "$OUT/gc.err"

# --- grand-challenge-forge's current phase format: two algorithm interfaces (film; film + age),
# the platform picks one per job by its input sockets; each job writes exactly its outputs
cat > "$OUT/phase.json" <<'JSON'
{"algorithm": {"title": "cxrkit", "slug": "cxrkit", "url": "https://grand-challenge.org/algorithms/cxrkit/",
 "algorithm_interfaces": [
  {"inputs": [{"slug": "chest-x-ray", "kind": "Image", "super_kind": "Image", "relative_path": "images/chest-x-ray"}],
   "outputs": [{"slug": "chest-x-ray-findings", "kind": "Anything", "super_kind": "File", "relative_path": "chest-x-ray-findings.json"}]},
  {"inputs": [{"slug": "chest-x-ray", "kind": "Image", "super_kind": "Image", "relative_path": "images/chest-x-ray"},
              {"slug": "patient-age", "kind": "Integer", "super_kind": "Value", "relative_path": "patient-age.json"}],
   "outputs": [{"slug": "chest-x-ray-findings", "kind": "Anything", "super_kind": "File", "relative_path": "chest-x-ray-findings.json"},
               {"slug": "cardiomegaly-likelihood", "kind": "Float", "super_kind": "Value", "relative_path": "cardiomegaly-likelihood.json"}]}]}}
JSON
GC1="$OUT/gc1-input"
mkdir -p "$GC1/images/chest-x-ray"
cp "$T/gc/input/images/chest-x-ray/case.mha" "$GC1/images/chest-x-ray/case.mha"
cat > "$GC1/inputs.json" <<'JSON'
[{"interface": {"slug": "chest-x-ray", "kind": "Image", "super_kind": "Image", "relative_path": "images/chest-x-ray"},
  "image": {"name": "case.mha"}}]
JSON
chmod -R a+rX "$OUT"
for job in gc1 gc; do  # gc1: film only; gc (above): film + age
  mkdir -m 777 "$OUT/$job-phase"
  engine_run "${STRICT[@]}" -e CXRKIT_GC_INTERFACE=/config/phase.json -v "$OUT/phase.json:/config/phase.json:ro" \
    -v "$OUT/$job-input:/input:ro" -v "$OUT/store:/store:ro" -v "$OUT/$job-phase:/output" "$TAG" 2>"$OUT/$job-phase.err"
  no_warnings "grand-challenge current format, job $job" "$OUT/$job-phase.err"
done
[ "$(ls "$OUT/gc1-phase" | tr '\n' ' ')" = "chest-x-ray-findings.json " ] \
  && [ "$(ls "$OUT/gc-phase" | sort | tr '\n' ' ')" = "cardiomegaly-likelihood.json chest-x-ray-findings.json " ] \
  && pass "grand-challenge algorithm_interfaces: each job writes its interface's outputs" \
  || failed "grand-challenge algorithm_interfaces: $(ls "$OUT/gc1-phase") / $(ls "$OUT/gc-phase")"
check "grand-challenge algorithm_interfaces, film-only job" "$OUT/gc1-phase/chest-x-ray-findings.json" \
  "$T/gc/expected/probabilities.json"

# --- the sagemaker-shim replaces the /input directory itself by a symlink
mkdir -m 777 "$OUT/gc-link"
engine_run "${STRICT[@]}" --entrypoint "" -e CXRKIT_GC_INTERFACE=/config/phase.json \
  -v "$OUT/phase.json:/config/phase.json:ro" -v "$OUT/gc1-input:/data/job-1:ro" -v "$OUT/gc-link:/output" "$TAG" \
  bash -c 'ln -s /data/job-1 /tmp/input && cxrkit-submit gc --input /tmp/input --output /output' 2>"$OUT/gc-link.err"
check "grand-challenge with a symlinked input directory" "$OUT/gc-link/chest-x-ray-findings.json" \
  "$T/gc/expected/probabilities.json"
no_warnings "grand-challenge symlinked input" "$OUT/gc-link.err"

# --- CXR-LT 2026 task 1 (PadChest + NIH): the 30-class header and row order of the sample
# submission, 16-bit PNG films, a model with the 30 classes mounted read-only
mkdir -m 777 "$OUT/cxrlt2026"
engine_run "${STRICT[@]}" -v "$T/cxrlt2026/model:/opt/ml/model:ro" -v "$T/cxrlt2026:/input:ro" \
  -v "$OUT/cxrlt2026:/output" -w /input "$TAG" cxr-lt test.csv /output --sample-submission sample_task1.csv \
  --images-root images 2>"$OUT/cxrlt2026.err"
check "cxr-lt 2026 task 1 submission.csv" "$OUT/cxrlt2026/submission.csv" "$T/cxrlt2026/expected/submission.csv"
no_warnings "cxr-lt 2026 task 1" "$OUT/cxrlt2026.err"

# --- legacy grand-challenge outputs without an interface; the model mounted read-only
mkdir -m 777 "$OUT/mounted"
engine_run "${STRICT[@]}" -v "$T/model:/opt/ml/model:ro" -v "$T/gc/input:/input:ro" -v "$OUT/mounted:/output" "$TAG"
check "model mounted read-only, results.json" "$OUT/mounted/results.json" "$T/gc/expected/results.json"
check "model mounted read-only, probabilities.json" "$OUT/mounted/probabilities.json" "$T/gc/expected/probabilities.json"

# --- a failure exits non-zero with the reason on stderr
if engine_run "${STRICT[@]}" -v "$T/cxrlt:/input:ro" "$TAG" chexpert missing.csv /tmp/out.csv 2>"$OUT/err.txt"; then
  failed "error exit (exit code 0)"
elif grep -q "missing.csv" "$OUT/err.txt"; then pass "error exit: $(head -1 "$OUT/err.txt")"
else failed "error message: $(cat "$OUT/err.txt")"; fi

exit $fail
