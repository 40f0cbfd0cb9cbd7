#!/usr/bin/env bash
# System packages the tests need that pip cannot install: a real PACS (Orthanc and its
# DICOMweb plugin, Debian packages) for tests/test_pacs.py, and dicom3tools' DICOM validator
# (dciodvfy) and dcmtk's SR reader (dsrdump) for the files cxrkit writes. Installs them when missing and apt-get can run
# (root); otherwise says so, and the tests that need them skip that part.
set -uo pipefail
if command -v Orthanc >/dev/null 2>&1 || [ -x /usr/sbin/Orthanc ]; then
  [ -f /usr/share/orthanc/plugins/libOrthancDicomWeb.so ] && command -v dciodvfy >/dev/null 2>&1 \
    && command -v dsrdump >/dev/null 2>&1 && exit 0
fi
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "test-deps: Orthanc / dicom3tools / dcmtk are not installed and apt-get cannot run here; the tests that need them will be skipped" >&2
  exit 0
fi
echo "test-deps: installing orthanc, orthanc-dicomweb, dicom3tools and dcmtk (Debian packages)" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >/dev/null 2>&1 || true
if ! apt-get install -y -qq --no-install-recommends orthanc orthanc-dicomweb dicom3tools dcmtk >/dev/null 2>&1; then
  echo "test-deps: apt-get could not install them; the tests that need them will be skipped" >&2
fi
# the package starts a system Orthanc where a service manager runs; the tests start their own
(command -v service >/dev/null 2>&1 && service orthanc stop >/dev/null 2>&1) || true
exit 0
