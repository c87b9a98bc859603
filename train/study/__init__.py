"""The study: planning a sweep, running its plans, reading run directories, and the report
(tables, statistics, plots).  Planning, records, tables, statistics and plots import no JAX;
``runner`` imports the training core only when a run starts."""
