"""Units of distributed work (Ray tasks/actors, Prefect tasks) around dfdcore."""
