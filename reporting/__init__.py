"""What the records say, read from the records alone (never a model, the loop or a strategy): the summary and
paired bootstrap, the verdict, diagnostics, the data report, tables, plots and the HTML page."""
