"""The agent: launcher, configuration, the distributed-tracing policy, SDK setup and exporters."""
