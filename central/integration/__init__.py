"""ERP/TPM adapters, the pull scheduler, the outbound delivery worker and a mock ERP/TPM server."""
