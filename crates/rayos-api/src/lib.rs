//! The control API: request and response types shared by rayosd and its
//! clients, and a blocking HTTP/1.1 client over a unix socket.
