"""Job lifecycle, durable queue, worker, templates and segments."""
