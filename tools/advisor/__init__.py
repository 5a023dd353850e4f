"""Query-plan insights and an RLS advisor for a live database (``python -m tools.advisor``)."""
