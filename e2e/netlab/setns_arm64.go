package netlab

const sysSetns = 268 // setns(2) on linux/arm64; the frozen syscall package lacks it
