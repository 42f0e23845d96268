"""Patient monitors over serial: Masimo ASCII 1 and Philips IntelliVue MIB/RS232."""
