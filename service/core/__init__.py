"""The protocol-neutral inference core: plain inputs in, domain objects out; no HTTP here."""
