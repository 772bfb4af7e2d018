"""The cloud side: the MQTT consumer and where it stores masks, crops, status and the labelling queue."""
