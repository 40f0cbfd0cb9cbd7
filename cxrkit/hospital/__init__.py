"""What a hospital's systems receive: ``pacs`` (cxrkit as a DICOM node: Storage SCP,
DICOMweb pull, the spool), ``sr`` (TID 1500 Measurement Reports), ``fhir`` (FHIR R4
Bundles), ``codes`` (the findings' SNOMED CT / DICOM codes, ``resources/finding_codes.csv``)
and ``dicom_out`` (what is copied from source films, validated)."""
