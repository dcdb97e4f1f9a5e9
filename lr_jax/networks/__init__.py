"""What a network is: the ``layers`` format, traced graphs and converters."""
