"""The gossipkv command line (installed as ``gossipkv_cli``): parses, calls the public API, prints."""
