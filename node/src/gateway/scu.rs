//! The SCU side of the gateway: C-ECHO, C-STORE of files, C-FIND and
//! C-MOVE at study level.
