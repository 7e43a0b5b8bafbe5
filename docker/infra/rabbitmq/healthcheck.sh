#!/bin/bash
# Healthy when the AMQP listener accepts a connection (RabbitMQ opens it only
# once the node has booted, its user included).
exec 3<>/dev/tcp/127.0.0.1/5672
