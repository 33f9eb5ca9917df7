/*
 * tapmig-guest: what the embedded guest needs for tapmig's traffic checks and
 * busybox does not have. Built static at guest build time (harness/guest.py).
 *
 *   tapmig-guest echo PORT COUNT   UDP echo on PORT .. PORT+COUNT-1, in the background
 *   tapmig-guest queues IFACE      one line: live/max queue pairs and per-queue packets
 *   tapmig-guest fifo PROG ARG...  run PROG (and what it forks) at SCHED_FIFO priority 1
 *
 * echo runs one worker per online CPU, pinned to it; flow i (port PORT+i) is
 * served by the worker on CPU i % ncpus. virtio-net maps CPU i to queue pair i
 * (IRQ affinity and XPS) when it has as many queue pairs as CPUs, so the reply
 * of flow i leaves on TX queue i % ncpus, and the TAP's flow steering sends the
 * flow's next requests to the same queue: every flow stays on a known queue pair
 * and every queue pair carries flows. Each reply is the request followed by the
 * worker's CPU (4 bytes, network order), so the host can check that assignment.
 *
 * The echo servers run at SCHED_FIFO priority 1: the ICMP probe's 1 kHz lands on
 * one queue, hence one CPU, and under TCG its softirq work alone can keep that CPU
 * busy; a worker of normal priority there would starve, and its flows would look
 * lost though every packet arrived. An echo at real-time priority answers what
 * the queue delivers, so the flows measure the network, not the guest's scheduler.
 *
 * queues reads the driver's own per-queue counters (ethtool -S) by ioctl, since
 * the busybox guest has no ethtool:
 *   TAPMIG-QUEUES live=4 max=4 rx=120,98,101,87 tx=119,98,100,88 xps=1,2,4,8
 * (xps: the CPUs, as a decimal mask, that send on each TX queue)
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <linux/ethtool.h>
#include <linux/sockios.h>
#include <net/if.h>
#include <netinet/in.h>
#include <poll.h>
#include <sched.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

#define MAX_FLOWS 256
#define MAX_QUEUES 64

static int udp_socket(int port)
{
	struct sockaddr_in addr = { .sin_family = AF_INET, .sin_port = htons(port) };
	int fd = socket(AF_INET, SOCK_DGRAM, 0);

	if (fd < 0 || bind(fd, (struct sockaddr *)&addr, sizeof(addr)) < 0) {
		fprintf(stderr, "tapmig-guest: udp port %d: %s\n", port, strerror(errno));
		exit(1);
	}
	return fd;
}

static void echo_one(int fd, uint32_t cpu)
{
	unsigned char buf[2048];
	struct sockaddr_in peer;
	socklen_t len = sizeof(peer);
	ssize_t n = recvfrom(fd, buf, sizeof(buf) - 4, MSG_DONTWAIT,
			     (struct sockaddr *)&peer, &len);

	if (n < 0)
		return;
	memcpy(buf + n, &cpu, 4);
	sendto(fd, buf, n + 4, 0, (struct sockaddr *)&peer, len);
}

static void realtime(void)
{
	struct sched_param param = { .sched_priority = 1 };

	if (sched_setscheduler(0, SCHED_FIFO, &param) < 0)
		fprintf(stderr, "tapmig-guest: cannot run at SCHED_FIFO: %s\n", strerror(errno));
}

/* Serve the sockets of flows cpu, cpu + ncpus, ... pinned to that CPU. */
static void worker(int cpu, int ncpus, const int *socks, int count)
{
	struct pollfd fds[MAX_FLOWS];
	int nfds = 0;
	uint32_t tag = htonl(cpu);
	cpu_set_t set;

	CPU_ZERO(&set);
	CPU_SET(cpu, &set);
	if (sched_setaffinity(0, sizeof(set), &set) < 0)
		fprintf(stderr, "tapmig-guest: cannot pin to cpu %d: %s\n", cpu, strerror(errno));
	realtime();
	for (int i = cpu; i < count; i += ncpus)
		fds[nfds++] = (struct pollfd){ .fd = socks[i], .events = POLLIN };
	for (;;) {
		if (poll(fds, nfds, -1) < 0 && errno != EINTR)
			exit(1);
		for (int i = 0; i < nfds; i++)
			if (fds[i].revents & POLLIN)
				echo_one(fds[i].fd, tag);
	}
}

/* Every socket is bound before the workers start, so the echo answers as soon as
 * this returns. */
static int echo(int port, int count)
{
	long ncpus = sysconf(_SC_NPROCESSORS_ONLN);
	int socks[MAX_FLOWS];

	if (port < 1 || count < 1 || count > MAX_FLOWS || port + count > 65536) {
		fprintf(stderr, "tapmig-guest: echo needs 1 <= COUNT <= %d ports below 65536\n",
			MAX_FLOWS);
		return 2;
	}
	if (ncpus < 1)
		ncpus = 1;
	for (int i = 0; i < count; i++)
		socks[i] = udp_socket(port + i);
	for (int cpu = 0; cpu < ncpus && cpu < count; cpu++)
		if (fork() == 0)
			worker(cpu, ncpus, socks, count);
	return 0;
}

static int ethtool(int fd, const char *iface, void *cmd)
{
	struct ifreq ifr;

	memset(&ifr, 0, sizeof(ifr));
	strncpy(ifr.ifr_name, iface, IFNAMSIZ - 1);
	ifr.ifr_data = cmd;
	return ioctl(fd, SIOCETHTOOL, &ifr);
}

static void print_list(const char *name, const long long *v, int n)
{
	printf(" %s=", name);
	for (int i = 0; i < n; i++)
		printf(i ? ",%lld" : "%lld", v[i]);
}

/* Which CPUs send on each TX queue (XPS), as hex masks: how a CPU maps to its queue. */
static void print_xps(const char *iface, int n)
{
	long long mask[MAX_QUEUES];

	for (int q = 0; q < n; q++) {
		char path[128];
		FILE *f;

		snprintf(path, sizeof(path), "/sys/class/net/%s/queues/tx-%d/xps_cpus", iface, q);
		f = fopen(path, "r");
		mask[q] = 0;
		if (f != NULL && fscanf(f, "%llx", &mask[q]) != 1)
			mask[q] = 0;
		if (f != NULL)
			fclose(f);
	}
	print_list("xps", mask, n);
}

/* With want > 0, that many queue pairs are enabled first (ethtool -L combined N;
 * -1: every one the device offers), as a guest that gains vCPUs after a migration
 * would do: the host's QEMU must then serve queues it may have had no use for. */
static int queues(const char *iface, int want)
{
	int fd = socket(AF_INET, SOCK_DGRAM, 0);
	struct ethtool_channels ch = { .cmd = ETHTOOL_GCHANNELS };
	struct { struct ethtool_sset_info hdr; uint32_t len; } sset = {
		.hdr = { .cmd = ETHTOOL_GSSET_INFO, .sset_mask = 1ULL << ETH_SS_STATS } };
	long long rx[MAX_QUEUES] = { 0 }, tx[MAX_QUEUES] = { 0 };
	int nrx = 0, ntx = 0;

	if (fd < 0 || ethtool(fd, iface, &ch) < 0) {
		printf("TAPMIG-QUEUES-FAILED %s: %s\n", iface, strerror(errno));
		return 1;
	}
	if (want < 0)
		want = (int)ch.max_combined;
	if (want > 0 && (uint32_t)want != ch.combined_count) {
		ch.cmd = ETHTOOL_SCHANNELS;
		ch.combined_count = (uint32_t)want;
		if (ethtool(fd, iface, &ch) < 0) {
			printf("TAPMIG-QUEUES-FAILED %s: set %d channels: %s\n", iface, want,
			       strerror(errno));
			return 1;
		}
		ch.cmd = ETHTOOL_GCHANNELS;
	}
	if (ethtool(fd, iface, &ch) < 0 || ethtool(fd, iface, &sset) < 0) {
		printf("TAPMIG-QUEUES-FAILED %s: %s\n", iface, strerror(errno));
		return 1;
	}
	uint32_t n = sset.len;
	struct ethtool_gstrings *names = calloc(1, sizeof(*names) + n * ETH_GSTRING_LEN);
	struct ethtool_stats *stats = calloc(1, sizeof(*stats) + n * sizeof(uint64_t));

	*names = (struct ethtool_gstrings){ .cmd = ETHTOOL_GSTRINGS, .string_set = ETH_SS_STATS,
					    .len = n };
	*stats = (struct ethtool_stats){ .cmd = ETHTOOL_GSTATS, .n_stats = n };
	if (ethtool(fd, iface, names) < 0 || ethtool(fd, iface, stats) < 0) {
		printf("TAPMIG-QUEUES-FAILED %s: %s\n", iface, strerror(errno));
		return 1;
	}
	for (uint32_t i = 0; i < n; i++) {
		const char *s = (const char *)names->data + i * ETH_GSTRING_LEN;
		int q;
		char dir[3];

		if (sscanf(s, "%2[rt]x_queue_%d_packets", dir, &q) == 2 && q >= 0 &&
		    q < MAX_QUEUES && strcmp(strchr(s + 9, '_'), "_packets") == 0) {
			long long *v = dir[0] == 'r' ? rx : tx;
			int *cnt = dir[0] == 'r' ? &nrx : &ntx;

			v[q] = (long long)stats->data[i];
			if (q + 1 > *cnt)
				*cnt = q + 1;
		}
	}
	printf("TAPMIG-QUEUES live=%u max=%u", ch.combined_count, ch.max_combined);
	print_list("rx", rx, nrx);
	print_list("tx", tx, ntx);
	print_xps(iface, ntx);
	printf("\n");
	return 0;
}

int main(int argc, char **argv)
{
	if (argc == 4 && strcmp(argv[1], "echo") == 0)
		return echo(atoi(argv[2]), atoi(argv[3]));
	if (argc == 3 && strcmp(argv[1], "queues") == 0)
		return queues(argv[2], 0);
	if (argc == 4 && strcmp(argv[1], "queues") == 0)
		return queues(argv[2], strcmp(argv[3], "all") == 0 ? -1 : atoi(argv[3]));
	if (argc >= 3 && strcmp(argv[1], "fifo") == 0) {
		realtime();
		execvp(argv[2], argv + 2);
		fprintf(stderr, "tapmig-guest: %s: %s\n", argv[2], strerror(errno));
		return 127;
	}
	fprintf(stderr, "usage: tapmig-guest echo PORT COUNT | queues IFACE [N|all] | fifo PROG ARG...\n");
	return 2;
}
