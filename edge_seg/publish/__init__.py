"""Getting results off the device: versioned messages, the on-disk outbox, the MQTT publisher, commands."""
