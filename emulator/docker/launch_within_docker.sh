#!/bin/sh
# Starts the emulated client; the role comes from the environment
# (WA_EMULATOR_IMAGE baked into the image, WA_DB_UPGRADE, WA_MASTER_NODE).
exec /opt/whatsapp/bin/whatsapp-emulator "$@"
