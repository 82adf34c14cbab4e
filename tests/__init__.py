"""The test suite: one subpackage per part of acmix_deploy; package-wide checks (layers, errors, packaging) here."""
