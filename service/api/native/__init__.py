"""attnserve's own REST API (/v1/next-token, /v1/attention, /v1/score)."""
