"""The call driver: runs call/ state machines against the SIP UA, the media plane and Matrix."""
