"""Backups: a restic driver and its repositories (issue 15)."""
