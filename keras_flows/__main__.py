"""`python -m keras_flows` is the `keras-flows` command."""

from keras_flows.cli import main

main()
