"""Instrumentors: entry-point discovery and lazy activation, plus the ones OpenTelemetry does not ship."""
