"""Running as a systemd service: sd_notify and the watchdog, the service wiring, unit install, doctor."""
