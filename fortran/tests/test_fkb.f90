! An FKB text file (as FKB writes them: tabs, padded blanks) read in file order.
program test_fkb
  use colnn
  implicit none
  type(network_t) :: net
  integer :: stat, u, j
  character(len=ERRMSG_LEN) :: msg
  real(wp) :: x(2, 4), y(1, 4)
  real(dp) :: h(3), expected(4), kern1(2, 3), kern2(3, 1)
  character(len=1), parameter :: nl = new_line('a'), tab = achar(9)

  open (newunit=u, file='model.fkb', status='replace', access='stream', form='unformatted')
  write (u) '6'//nl//'input'//tab//'2'//nl//'dense 3'//nl//'linear 0'//nl//'batchnormalization 0'//nl// &
    'leakyrelu'//tab//'0.3'//nl//'dense 1'//nl// &
    '0.001'//nl// &
    '0.1   0.2   -0.3'//nl//'0.5'//nl// &
    '1.0 2.0 3.0 4.0 5.0 6.0'//nl//'1.0 -1.0 0.5'//nl// &
    '0.0 0.1 0.2'//nl//'1.0 2.0 0.5'//nl//'0.5 0.0 -0.5'//nl//'1.0 4.0 9.0'//nl
  close (u)
  ! weights line = Keras kernel transposed, flattened: kernel(in=2, out=3) = [[1,3,5],[2,4,6]]
  kern1 = reshape([1.0_dp, 2.0_dp, 3.0_dp, 4.0_dp, 5.0_dp, 6.0_dp], [2, 3])
  kern2 = reshape([1.0_dp, -1.0_dp, 0.5_dp], [3, 1])

  call net%load('model.fkb', stat, msg)
  if (stat /= 0) then
    print '(a)', 'FAIL: '//trim(msg)
    error stop 1
  end if
  if (net%n_layers /= 5 .or. net%n_inputs /= 2 .or. net%n_outputs /= 1) error stop 'FAIL: FKB shape'
  x = reshape([1.0_wp, -1.0_wp, 0.5_wp, 2.0_wp, -2.0_wp, 0.0_wp, 0.0_wp, 0.0_wp], [2, 4])
  call net%forward(x, y, stat, msg)
  do j = 1, 4
    h = matmul(real(x(:, j), dp), kern1) + [0.1_dp, 0.2_dp, -0.3_dp]
    h = [1.0_dp, 2.0_dp, 0.5_dp] * (h - [0.5_dp, 0.0_dp, -0.5_dp]) / sqrt([1.0_dp, 4.0_dp, 9.0_dp] + 0.001_dp) &
        + [0.0_dp, 0.1_dp, 0.2_dp]
    h = merge(h, 0.3_dp * h, h >= 0)
    expected(j) = sum(h * kern2(:, 1)) + 0.5_dp
  end do
  if (stat /= 0 .or. maxval(abs(y(1, :) - expected)) > 1e-5 * maxval(abs(expected))) then
    print '(a)', 'FAIL: FKB forward'
    print *, y
    print *, expected
    error stop 1
  end if

  ! unknown activation: an error naming it, never a sigmoid
  open (newunit=u, file='bad.fkb', status='replace', access='stream', form='unformatted')
  write (u) '3'//nl//'input 2'//nl//'dense 1'//nl//'gaussian 0'//nl//'0.1'//nl//'0.5'//nl//'1.0 2.0'//nl
  close (u)
  call net%load('bad.fkb', stat, msg)
  if (stat /= COLNN_ERR_UNSUPPORTED .or. index(msg, 'gaussian') == 0 .or. index(msg, 'bad.fkb') == 0) then
    print '(a)', 'FAIL: unknown FKB activation: '//trim(msg)
    error stop 1
  end if
  ! truncated: a missing weights line
  open (newunit=u, file='short.fkb', status='replace', access='stream', form='unformatted')
  write (u) '2'//nl//'input 2'//nl//'dense 1'//nl//'0.1'//nl//'0.5'//nl
  close (u)
  call net%load('short.fkb', stat, msg)
  if (stat /= COLNN_ERR_FORMAT .or. index(msg, 'truncated') == 0) then
    print '(a)', 'FAIL: truncated FKB: '//trim(msg)
    error stop 1
  end if
  ! the files it wrote go (fpm test runs in the project's root)
  open (newunit=u, file='model.fkb', status='old')
  close (u, status='delete')
  open (newunit=u, file='bad.fkb', status='old')
  close (u, status='delete')
  open (newunit=u, file='short.fkb', status='old')
  close (u, status='delete')
  print '(a)', 'test_fkb: all passed'
end program test_fkb
