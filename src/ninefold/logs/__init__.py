"""Logs: the agent's line formats (text, JSON, RFC 5424), reading and
filtering log files for `ninefold logs`, and forwarding to syslog
(docs/logs.md)."""
