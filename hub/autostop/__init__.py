"""The auto-stop process: stops instances whose auto-stop time has come."""
