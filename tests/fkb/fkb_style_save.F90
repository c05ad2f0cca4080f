! Writes an FKB model file the way FKB's own Fortran `save` (mod_network.F90) lays it out, for
! the tests: list-directed output of
!   size(layer_info)                           (an integer)
!   layer_names(n), layer_info(n)              (character(len=100) and real(rk): '5.00000000')
!   lr                                         (real(rk))
!   b of every dense layer, one record each    (real(rk) vectors)
!   w of every dense layer, one record each    (w(n_in, n_out) in column-major order)
!   beta, gama, mean, variance of every batch normalization layer
! rk is real32 as in FKB's default build, real64 with -DREAL64 as in FKB's REAL64 build.
! Written here from FKB's documented layout; no FKB code is used.
!
! Usage: fkb_style_save PARAMS OUT [architecture-only]
! PARAMS (written by the test) holds: the number of layer lines; per line a name and a value;
! the learning rate; then per dense layer n_in*n_out kernel values (Keras order, kernel(in, out)
! row-major) and n_out biases; then per batch normalization layer 4 vectors of its width.
program fkb_style_save
  use iso_fortran_env, only: real32, real64
  implicit none
#ifdef REAL64
  integer, parameter :: rk = real64
#else
  integer, parameter :: rk = real32
#endif
  type :: dense_t
    real(rk), allocatable :: w(:, :), b(:)
  end type
  type :: bn_t
    real(rk), allocatable :: beta(:), gama(:), mean(:), variance(:)
  end type
  character(len=100), allocatable :: layer_names(:)
  real(rk), allocatable :: layer_info(:), kernel(:)
  type(dense_t), allocatable :: dense(:)
  type(bn_t), allocatable :: bn(:)
  real(rk) :: lr
  character(len=1024) :: params, out, mode
  integer :: u, n, i, n_dense, n_bn, width, n_in
  logical :: architecture_only

  call get_command_argument(1, params)
  call get_command_argument(2, out)
  call get_command_argument(3, mode)
  architecture_only = trim(mode) == 'architecture-only'

  open (newunit=u, file=trim(params), status='old', action='read')
  read (u, *) n
  allocate (layer_names(n), layer_info(n))
  do i = 1, n
    read (u, *) layer_names(i), layer_info(i)
  end do
  read (u, *) lr
  n_dense = count(layer_names == 'dense')
  n_bn = count(layer_names == 'batchnormalization')
  allocate (dense(n_dense), bn(n_bn))
  n_dense = 0
  n_bn = 0
  width = 0
  do i = 1, n
    select case (trim(layer_names(i)))
    case ('input')
      width = nint(layer_info(i))
    case ('dense')
      n_in = width
      width = nint(layer_info(i))
      n_dense = n_dense + 1
      allocate (kernel(n_in * width), dense(n_dense)%b(width))
      read (u, *) kernel
      ! Keras kernel(in, out) row-major = w(in, out) column-major transposed
      dense(n_dense)%w = transpose(reshape(kernel, [width, n_in]))
      read (u, *) dense(n_dense)%b
      deallocate (kernel)
    case ('batchnormalization')
      n_bn = n_bn + 1
      allocate (bn(n_bn)%beta(width), bn(n_bn)%gama(width), bn(n_bn)%mean(width), &
                bn(n_bn)%variance(width))
      read (u, *) bn(n_bn)%beta, bn(n_bn)%gama, bn(n_bn)%mean, bn(n_bn)%variance
    end select
  end do
  close (u)

  open (newunit=u, file=trim(out))
  write (u, fmt=*) size(layer_info)
  do i = 1, size(layer_names)
    write (u, fmt=*) layer_names(i), layer_info(i)
  end do
  write (u, fmt=*) lr
  if (.not. architecture_only) then
    do i = 1, size(dense)
      write (u, fmt=*) dense(i)%b
    end do
    do i = 1, size(dense)
      write (u, fmt=*) dense(i)%w
    end do
    do i = 1, size(bn)
      write (u, fmt=*) bn(i)%beta
      write (u, fmt=*) bn(i)%gama
      write (u, fmt=*) bn(i)%mean
      write (u, fmt=*) bn(i)%variance
    end do
  end if
  close (u)
end program fkb_style_save
