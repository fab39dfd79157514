#!/usr/bin/env python3
"""Django's command-line utility for the keylock example site."""
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
# Use the keylock package straight from the source tree when it is not installed.
sys.path.insert(0, os.path.join(HERE, "..", "..", "client", "python"))

if __name__ == "__main__":
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "keylock_site.settings")
    from django.core.management import execute_from_command_line

    execute_from_command_line(sys.argv)
