//! IO backends (io_uring, epoll): sockets, buffers, timers. Knows nothing of MQTT.
