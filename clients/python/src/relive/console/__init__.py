"""The relive console: a web page over the timeline, served by ``relive console``."""
