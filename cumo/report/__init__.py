"""The run's results as people read them: the main table (reproduced vs the paper) and the plots."""
