"""Security: the cluster CA and certificates, bearer tokens."""
