"""Load-testing tools: a closed-loop client (python -m loadtest) and a Locust file."""
