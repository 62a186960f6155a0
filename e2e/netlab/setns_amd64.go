package netlab

const sysSetns = 308 // setns(2) on linux/amd64; the frozen syscall package lacks it
