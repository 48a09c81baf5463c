"""The always-on service (`flatd run`): watching, ingesting, scheduling and running
the combinations, signals, reload, the systemd protocol, the hook and the metrics."""
