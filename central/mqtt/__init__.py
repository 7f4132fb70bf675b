"""MQTT transport of edge events (edge.md): the consumer, the batch applier, the embedded broker."""
