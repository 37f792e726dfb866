"""notify-server: the Twilio Notify v1 REST API, self-hosted."""
