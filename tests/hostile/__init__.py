"""The hostile suite (issue #18): an attacker per class, each against a real p2pchat process."""
