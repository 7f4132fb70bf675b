"""The simulated automated line (edge.md "Simulators"): PLCs over Modbus TCP, testers over OPC UA."""
