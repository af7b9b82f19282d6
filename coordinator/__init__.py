"""The coordinator: validates and plans jobs, schedules partitions on agents, aggregates partials."""
