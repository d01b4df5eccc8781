"""Where alert notices go: webhook (Alertmanager's format), email over SMTP,
a command (channels.py). The rules and their evaluation are in
spec/alerts.py and decide/alerts.py; the leader's loop in agent/alerts.py."""
