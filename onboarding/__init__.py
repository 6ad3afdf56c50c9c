"""Merchant data onboarding: upload, validation (Great Expectations), encryption, withdrawal.

Entry points: :func:`onboarding.ingest.ingest_upload`, :func:`onboarding.withdraw.withdraw`,
:func:`onboarding.withdraw.export_own_dataset` and
:func:`onboarding.platform_datasets.register_platform_dataset` (see docs/onboarding.md).
"""
